import asyncio

from pid1.exec_sandbox import Scheduler


async def main():
    async with Scheduler() as scheduler:
        # Shell (Bash) — env vars, cwd, and functions persist
        async with await scheduler.session(language="raw") as session:
            await session.exec("cd /tmp && export MY_VAR=hello")
            result = await session.exec("echo $MY_VAR from $(pwd)")
            print(result.stdout)


asyncio.run(main())
