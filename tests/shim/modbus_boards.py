"""Modbus RTU relay boards for ZenEdge's tests, run by pymodbus.

Usage: modbus_boards.py PORT ADDRESS [ADDRESS ...]

Serves one board per slave ADDRESS on the serial PORT (one RS-485 bus), each with 16 coils
from address 0. Every coil write is printed as "<address> <coil> <0|1>", one line, flushed,
so the test sees which coil of which board was told what and in what order.
"""

import asyncio
import sys

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.server import StartAsyncSerialServer
from pymodbus.transaction import ModbusRtuFramer


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
            print(f"{self.board} {address + i} {1 if value else 0}", flush=True)


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
    print("serving", flush=True)
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
