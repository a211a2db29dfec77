from inos_node.cli import main

raise SystemExit(main())
