from gridpacs.cli import main

main()
