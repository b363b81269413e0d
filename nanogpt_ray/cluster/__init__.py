"""The Ray wing: the only package that imports ray. Each module wires pure code from the package root into
Ray (session: start or join a cluster; train: Ray Train; tune: Ray Tune; sampling and bench: actors;
prepare: Ray Data). The work itself lives in the pure modules, unit-tested without Ray."""
