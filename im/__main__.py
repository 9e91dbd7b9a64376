from im.cli import main

main()
