"""Models behind one small interface per role: generation backends return n completions per prompt, reward backends
one score per conversation. `registry` maps a backend name to its class; heavy libraries are imported only when chosen."""
