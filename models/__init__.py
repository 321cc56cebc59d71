"""The model: pure numpy functions, arrays in and arrays out, no I/O.

- ``pue``: PUE per ISO/IEC 30134-2 (instantaneous, interval from energy, partial, losses);
- ``power``: PDU feed capacity (NEC 210.20(A)), A/B feeds, phases, upstream source pools;
- ``cooling``: coolant properties (CoolProp), liquid/air heat, CDU loops, ASHRAE classes;
- ``headroom``: per-rack kW headroom over every limit, the binding one, the shared pools;
- ``whatif``: placing N racks of X kW into a row's pools;
- ``backup``: supercap energy and ride-through, the chain to the generator (NFPA 110).

NaN means unknown and propagates; +inf means a limit does not apply; -1 in an index array
means "none".
"""
