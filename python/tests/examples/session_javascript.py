import asyncio

from pid1.exec_sandbox import Scheduler


async def main():
    async with Scheduler() as scheduler:
        # JavaScript/TypeScript — variables and functions persist
        async with await scheduler.session(language="javascript") as session:
            await session.exec("const greet = (name: string): string => `Hello, ${name}!`")
            result = await session.exec("console.log(greet('World'))")


asyncio.run(main())
