"""The process: the app factory and listeners (`app`), the public and admin HTTP apps
(`public`, `admin`), the parts every listener shares (`state`), drain (`drain`,
`drain_plan`) and the services applications reach (`services`)."""
