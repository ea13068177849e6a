"""The contract layer: what every stage agrees on (DESIGN.md).

Topics and payloads (``schemas``), the registry of units, who a username is
(``identity``), the GB/T 24476 wire format, local time and boiler physics. It imports
nothing from sesmon's other layers or from any stage.
"""
