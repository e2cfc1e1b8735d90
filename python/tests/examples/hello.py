import asyncio

from pid1.exec_sandbox import Scheduler


async def main():
    async with Scheduler() as scheduler:
        result = await scheduler.run(
            code="print('Hello from a secure VM!')",
            language="python",  # or "javascript", "raw"
        )
        print(result.stdout)     # Hello from a secure VM!
        print(result.exit_code)  # 0


asyncio.run(main())
