from ecovae.cli import main

main()
