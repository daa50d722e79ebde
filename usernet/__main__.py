from usernet.cli import main

raise SystemExit(main())
