"""Jobs: QEMU's job state machine, transactions of jobs, and the backup job."""
