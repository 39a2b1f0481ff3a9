"""The pipeline's stages: the RQ job functions (`generate`, `score`) and the pure logic that turns scored candidates
into output rows (`dedup`, `selection`, `output`, `aggregate`)."""
