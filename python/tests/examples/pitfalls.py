import asyncio

from pid1.exec_sandbox import Scheduler


async def main():
    async with Scheduler() as scheduler:
        # run() creates a fresh VM each time - state doesn't persist across calls
        result1 = await scheduler.run("x = 42", language="python")
        result2 = await scheduler.run("print(x)", language="python")  # NameError!
        print(result2.exit_code, "NameError" in result2.stderr)
        # Fix: use sessions for multi-step stateful execution
        async with await scheduler.session(language="python") as session:
            await session.exec("x = 42")
            result = await session.exec("print(x)")  # Works! x persists
            print(result.stdout)


asyncio.run(main())
