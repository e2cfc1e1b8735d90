import asyncio
import io
from pathlib import Path
from pid1.exec_sandbox import Scheduler


async def main():
    async with Scheduler() as scheduler:
        async with await scheduler.session(language="python") as session:
            # Write from bytes, a local Path, or any IO[bytes] stream
            await session.write_file("input.csv", b"name,score\nAlice,95\nBob,87")
            await session.write_file("model.pkl", Path("./local_model.pkl"))
            await session.write_file("data.bin", io.BytesIO(b"in-memory"))

            # Execute code that reads input and writes output
            await session.exec("data = open('input.csv').read().upper()")
            await session.exec("open('output.csv', 'w').write(data)")

            # Read to a local Path or any IO[bytes] buffer
            await session.read_file("output.csv", destination=Path("./output.csv"))
            buf = io.BytesIO()
            await session.read_file("data.bin", destination=buf)

            # List files in a directory
            files = await session.list_files("")  # sandbox root
            for f in files:
                print(f"{f.name} {'dir' if f.is_dir else f'{f.size}B'}")


asyncio.run(main())
