import asyncio

from pid1.exec_sandbox import Scheduler, SchedulerConfig


async def main():
    config = SchedulerConfig(
        warm_pool_size=1,            # Pre-started VMs per language (0 disables)
        default_memory_mb=512,       # Per-VM memory
        default_timeout_seconds=60,  # Execution timeout
        s3_bucket="my-snapshots",    # Remote cache for package snapshots
        s3_region="us-east-1",
    )

    async with Scheduler(config) as scheduler:
        result = await scheduler.run(code="print('configured')", language="python")
        print(result.stdout)


asyncio.run(main())
