import asyncio

from pid1.exec_sandbox import Scheduler


async def main():
    async with Scheduler() as scheduler:
        # Infrastructure failures raise before reaching here (see Error Handling).
        result = await scheduler.run(code="import os; os.kill(os.getpid(), 11)", language="python")

        if result.exit_code == 0:
            pass  # Success
        elif result.exit_code > 128:
            signal_num = result.exit_code - 128  # e.g., 9 for SIGKILL
            print(f"killed by signal {signal_num}")
        elif result.exit_code == -1:
            pass  # Execution timeout (code ran too long, see result.stderr)
        else:
            pass  # Program exited with error


asyncio.run(main())
