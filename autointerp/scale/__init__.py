"""Beyond one process: shard specs (`shards`), the lossless merge of shard stores (`merge`) and the Ray
driver that runs the shards on a cluster (`ray_driver`, needs the `scale` extra)."""
