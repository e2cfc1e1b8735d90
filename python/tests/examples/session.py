import asyncio

from pid1.exec_sandbox import Scheduler


async def main():
    async with Scheduler() as scheduler:
        async with await scheduler.session(language="python") as session:
            await session.exec("import math")
            await session.exec("x = math.pi * 2")
            result = await session.exec("print(f'{x:.4f}')")
            print(result.stdout)  # 6.2832
            print(session.exec_count)  # 3


asyncio.run(main())
