"""The memory plan, its allocation, and (later) measurement and batch solving."""
