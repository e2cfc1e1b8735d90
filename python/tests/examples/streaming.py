import asyncio

from pid1.exec_sandbox import Scheduler


async def main():
    async with Scheduler() as scheduler:
        result = await scheduler.run(
            code="for i in range(5): print(i)",
            language="python",
            on_stdout=lambda chunk: print(f"[OUT] {chunk}", end=""),
            on_stderr=lambda chunk: print(f"[ERR] {chunk}", end=""),
        )


asyncio.run(main())
