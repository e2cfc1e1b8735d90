import asyncio

from pid1.exec_sandbox import Scheduler


async def main():
    async with Scheduler() as scheduler:
        boot_lines: list[str] = []
        result = await scheduler.run(
            code="print('hello')",
            language="python",
            on_boot_log=boot_lines.append,  # Automatically enables verbose boot
        )
        for line in boot_lines:
            print(f"[boot] {line}")


asyncio.run(main())
