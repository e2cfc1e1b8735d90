import asyncio

from pid1.exec_sandbox import Scheduler


async def main():
    async with Scheduler() as scheduler:
        result = await scheduler.run(
            code="import pandas; print(pandas.__version__)",
            language="python",
            packages=["pandas==2.2.0", "numpy==1.26.0"],
        )
        print(result.stdout)  # 2.2.0


asyncio.run(main())
