"""A modality in its own process: C-STOREs every file of a folder on one association.

Prints ``ACK <SOPInstanceUID>`` (flushed) right after each success response, so the parent
knows exactly what the node acknowledged even if the node dies the next moment; prints
``FAIL <uid> 0x<status>`` for any other response and ``ABORT`` when the association is lost.

    python -m tests.integration.sender HOST PORT CALLED_AE FOLDER [--calling-ae AE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from tests.integration.tcp import disable_nagle_for_pynetdicom_clients


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("called_ae")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--calling-ae", default="SENDER")
    args = parser.parse_args(argv)

    files = sorted(args.folder.glob("*.dcm"))
    disable_nagle_for_pynetdicom_clients()
    ae = AE(ae_title=args.calling_ae)
    ae.acse_timeout = 20
    ae.dimse_timeout = 60
    ae.network_timeout = 60
    for uid in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(uid, [ExplicitVRLittleEndian])
    assoc = ae.associate(args.host, args.port, ae_title=args.called_ae)
    if not assoc.is_established:
        print("NOASSOC", flush=True)
        return 2
    try:
        for path in files:
            ds = dcmread(path)
            try:
                rsp = assoc.send_c_store(ds)
            except (RuntimeError, OSError):  # the association died under us
                print("ABORT", flush=True)
                return 3
            if "Status" not in rsp:
                print("ABORT", flush=True)
                return 3
            status = int(rsp.Status)
            if status == 0x0000:
                print(f"ACK {ds.SOPInstanceUID}", flush=True)
            else:
                print(f"FAIL {ds.SOPInstanceUID} 0x{status:04X}", flush=True)
            if not assoc.is_established:
                print("ABORT", flush=True)
                return 3
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
