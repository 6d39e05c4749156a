"""The ``gridpacs`` command: composes the CLIs of node, catalog, storage and anonymizer."""
