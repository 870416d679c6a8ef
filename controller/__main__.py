from controller.entrypoints.cli import main

main()
