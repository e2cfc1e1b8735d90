import asyncio

from pid1.exec_sandbox import Scheduler


async def main():
    async with Scheduler() as scheduler:
        result = await scheduler.run(
            code="import urllib.request; print(urllib.request.urlopen('https://httpbin.org/ip').read())",
            language="python",
            allow_network=True,
            allowed_domains=["httpbin.org"],  # Domain allowlist
        )


asyncio.run(main())
