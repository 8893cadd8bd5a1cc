#!/usr/bin/env python3
"""Reads `emberwatch sim --sunspec` with pysunspec2, the SunSpec Alliance's own client, so that
tests/sunspec.rs can check the simulator's map against an implementation that is not ours.

Usage: sunspec_client.py HOST PORT [UNIT]
Prints one JSON object on stdout: the models found (id, start register, length) and a few point
values with scale factors applied (None where the point is "not implemented").

Usage: sunspec_client.py models
Prints the points of models 802 to 805 as pysunspec2 ships their definitions:
{"802": {"SoC": [offset from the ID register, type, scale factor name, mandatory], ...}, ...},
for the test that checks emberwatch's embedded tables (src/sunspec/models.rs) against them.

Exits 3 with a line "SKIPPED: ..." when pysunspec2 is not installed, 1 on any other failure.
"""
import json
import os
import sys

try:
    import sunspec2.modbus.client as client
except ImportError as e:  # the test prints the SKIPPED line and passes
    print(f"SKIPPED: pysunspec2 is not installed ({e}); scripts/test.sh installs it")
    sys.exit(3)


def model_definitions():
    import sunspec2

    root = os.path.join(os.path.dirname(sunspec2.__file__), "models", "json")
    out = {}
    for model in (802, 803, 804, 805):
        with open(os.path.join(root, f"model_{model}.json")) as f:
            group = json.load(f)["group"]
        offset, points = 0, {}
        for p in group["points"]:
            points[p["name"]] = [offset, p["type"], p.get("sf"), p.get("mandatory") == "M"]
            offset += p.get("size", 1)
        out[str(model)] = {"fixed_len": offset - 2, "points": points}
    print(json.dumps(out))


def main():
    if sys.argv[1:] == ["models"]:
        return model_definitions()
    host, port = sys.argv[1], int(sys.argv[2])
    unit = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    d = client.SunSpecModbusClientDeviceTCP(slave_id=unit, ipaddr=host, ipport=port, timeout=5)
    try:
        d.scan()
        models = []
        for key, instances in d.models.items():
            if isinstance(key, int):
                for m in instances:
                    models.append({"id": key, "start": m.model_addr, "length": m.model_len})
        models.sort(key=lambda m: m["start"])
        common = d.models[1][0]
        battery = d.models[802][0]
        string = d.models[804][0]
        modules = string.lithium_ion_string_module
        out = {
            "models": models,
            "manufacturer": common.Mn.value,
            "model": common.Md.value,
            "serial": common.SN.value,
            "battery": {
                "SoC": battery.SoC.cvalue,
                "SoH": battery.SoH.cvalue,
                "V": battery.V.cvalue,
                "A": battery.A.cvalue,
                "Typ": battery.Typ.value,
                "State": battery.State.value,
            },
            "string": {
                "SoC": string.SoC.cvalue,
                "SoH": string.SoH.cvalue,
                "NMod": string.NMod.value,
                "ModTmpMax": string.ModTmpMax.cvalue,
                "ModTmpMin": string.ModTmpMin.cvalue,
                "Evt1": string.Evt1.value,
                "Evt2": string.Evt2.value,
            },
            "module_cell_temp_max": [m.ModCellTmpMax.cvalue for m in modules],
        }
        print(json.dumps(out))
    finally:
        d.close()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a failure the test shows as is
        print(f"sunspec_client.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
