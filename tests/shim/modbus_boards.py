"""Modbus RTU relay boards for ZenEdge's tests, run by pymodbus.

Usage: modbus_boards.py PORT ADDRESS [ADDRESS ...]

Serves one board per slave ADDRESS on the serial PORT (one RS-485 bus), each with 16 coils
and 16 discrete inputs from address 0. Every coil write is printed as
"<address> <coil> <0|1>", one line, flushed, so the test sees which coil of which board was
told what and in what order. A line "input <address> <input> <0|1>" on stdin sets a discrete
input (a door contact's wire), answered "input <address> <input> <0|1>" once it is set.
"""

import asyncio
import sys
import threading

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.server import StartAsyncSerialServer
from pymodbus.transaction import ModbusRtuFramer


SAY = threading.Lock()


def say(line):
    """One whole line on stdout: two threads print, and print() writes the text and its
    newline apart, so lines could interleave."""
    with SAY:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Coils(ModbusSequentialDataBlock):
    """A board's coils that report every write."""

    def __init__(self, board):
        super().__init__(0, [False] * 16)
        self.board = board

    def setValues(self, address, values):
        super().setValues(address, values)
        if not isinstance(values, list):
            values = [values]
        for i, value in enumerate(values):
            say(f"{self.board} {address + i} {1 if value else 0}")


def main():
    port, boards = sys.argv[1], [int(a) for a in sys.argv[2:]]
    slaves = {
        b: ModbusSlaveContext(
            co=Coils(b),
            di=ModbusSequentialDataBlock(0, [False] * 16),
            hr=ModbusSequentialDataBlock(0, [0] * 16),
            ir=ModbusSequentialDataBlock(0, [0] * 16),
            zero_mode=True,
        )
        for b in boards
    }
    context = ModbusServerContext(slaves=slaves, single=False)

    def inputs():
        # Line by line, unbuffered: the test waits for each answer before the next line.
        while line := sys.stdin.buffer.readline().decode():
            f = line.split()
            if len(f) == 4 and f[0] == "input" and int(f[1]) in slaves:
                board, index, on = int(f[1]), int(f[2]), f[3] == "1"
                # Function code 2: the discrete inputs.
                slaves[board].setValues(2, index, [on])
                say(f"input {board} {index} {1 if on else 0}")

    threading.Thread(target=inputs, daemon=True).start()
    say("serving")
    asyncio.run(
        StartAsyncSerialServer(
            context=context,
            framer=ModbusRtuFramer,
            port=port,
            baudrate=9600,
            ignore_missing_slaves=True,
        )
    )


if __name__ == "__main__":
    main()
