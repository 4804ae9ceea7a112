"""The benchmark harness (throughput and latency against a CPU baseline). Filled by issue #6."""
