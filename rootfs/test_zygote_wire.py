"""The zygote's side of the init<->zygote records, held to the bytes of
proto/ZYGOTE.md (the init's unit tests in src/job/zygote.rs hold its side
to the same). Runs on the host, no VM: python3 rootfs/test_zygote_wire.py
"""

import os
import sys
import unittest

# zygote.py is the guest's script, not a package: imported from its own
# directory, without leaving bytecode next to it.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zygote  # noqa: E402

# Little-endian: the bytes of ZYGOTE.md, as an x86-64 guest writes them.
REQUEST = bytes.fromhex(
    "09000000"  # length
    "01000000"  # job
    "0a000000"  # code fd
    "0c000000"  # stdout fd
    "0e000000"  # stderr fd
    "01000000"  # has_cwd
    "e8030000"  # uid 1000
    "00000000"  # stdin fd: none
    "0f000000"  # cgroup fd
) + b"A=1\0/tmp\0"
READY = bytes.fromhex("00000000" "00000000" "00000000")
SPAWNED = bytes.fromhex("01000000" "01000000" "2a000000")
FAILED = bytes.fromhex("02000000" "01000000" "00000000")


@unittest.skipUnless(sys.byteorder == "little", "the examples are little-endian")
class Wire(unittest.TestCase):
    def test_sizes(self):
        self.assertEqual(zygote.HEADER.size, 36)
        self.assertEqual(zygote.REPLY.size, 12)

    def test_a_request_decodes_from_its_golden_bytes(self):
        request = zygote.decode_request(REQUEST[:zygote.HEADER.size])
        self.assertEqual(
            request,
            zygote.Request(length=9, job=1, code=10, stdout=12, stderr=14, has_cwd=1, uid=1000, stdin=0,
                           cgroup=15))
        block = REQUEST[zygote.HEADER.size:]
        self.assertEqual(len(block), request.length)
        self.assertEqual(zygote.decode_environment(block, request.has_cwd), (["A=1"], "/tmp"))

    def test_a_block_without_cwd_is_all_variables(self):
        self.assertEqual(zygote.decode_environment(b"A=1\0B=x=y\0", False), (["A=1", "B=x=y"], None))
        self.assertEqual(zygote.decode_environment(b"", False), ([], None))

    def test_replies_encode_to_their_golden_bytes(self):
        self.assertEqual((zygote.READY, zygote.SPAWNED, zygote.FAILED), (0, 1, 2))
        self.assertEqual(zygote.encode_reply(zygote.READY, 0, 0), READY)
        self.assertEqual(zygote.encode_reply(zygote.SPAWNED, 1, 42), SPAWNED)
        self.assertEqual(zygote.encode_reply(zygote.FAILED, 1, 0), FAILED)


if __name__ == "__main__":
    unittest.main()
