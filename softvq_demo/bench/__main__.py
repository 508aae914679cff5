from .gpu import main

main()
