from spotmap.cli import main

main()
