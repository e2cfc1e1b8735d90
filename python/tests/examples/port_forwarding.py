import asyncio

from pid1.exec_sandbox import Scheduler, PortMapping


async def main():
    async with Scheduler() as scheduler:
        # Port forwarding without internet (isolated)
        result = await scheduler.run(
            code="print('server ready')",
            language="python",
            expose_ports=[PortMapping(internal=8080, external=3000)],  # Guest:8080 → Host:3000
            allow_network=False,  # No outbound internet
        )
        print(result.exposed_ports[0].url)  # http://127.0.0.1:3000


asyncio.run(main())
