import asyncio

from pid1.exec_sandbox import (
    Scheduler,
    InputValidationError,
    PackageNotAllowedError,
    SandboxError,
    VmTimeoutError,
    VmTransientError,
)


async def main():
    async with Scheduler() as scheduler:
        try:
            result = await scheduler.run(code="print('hello')", language="python", timeout_seconds=5)

            # Execution timeouts are NOT exceptions — they return a result with exit_code=-1.
            if result.exit_code == -1:
                print(f"Code timed out: {result.stderr}")

        except InputValidationError as e:
            # Caller bug — bad code or env vars. Fix input and retry.
            # (CodeValidationError, EnvVarValidationError inherit from this)
            print(f"Invalid input: {e}")
        except VmTimeoutError:
            # VM failed to boot (guest agent not ready). Often transient (CPU contention).
            print("VM boot timed out — retry may succeed")
        except VmTransientError:
            # Infrastructure failure before dispatch (connect/readiness failure) — code never ran, safe to retry.
            # If the transport is lost AFTER dispatch, CommunicationOutcomeUnknownError is raised instead:
            # the code may have run, so reconcile side effects before retrying.
            # VmTimeoutError is a subclass, so this must come after it.
            print("Transient VM failure, retry may succeed")
        except PackageNotAllowedError as e:
            print(f"Package not in allowlist: {e}")
        except SandboxError as e:
            print(f"Sandbox error: {e}")


asyncio.run(main())
