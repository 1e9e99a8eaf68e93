"""Static analysis of our contracts with Slither; exits non-zero on any high or medium finding.

Run from the repository root with the project's venv: `python scripts/slither_check.py`
(`make lint`). Slither's CLI cannot drive our solc bridge (solcjs behind a `solc` wrapper), so
this goes through its Python API, as TOOLCHAIN.md describes: a standard-JSON compilation of
every contract under contracts/ with the OpenZeppelin and solady remappings, then every
detector. Findings located only in dependencies (node_modules) are ignored.

Accepted findings are listed in ACCEPTED with the reason; anything else at high or medium
impact fails the check. Low and informational findings are printed as a summary only.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from crytic_compile import CryticCompile
from crytic_compile.platform.solc_standard_json import SolcStandardJson
from slither import Slither
from slither.detectors import all_detectors
from slither.detectors.abstract_detector import AbstractDetector, DetectorClassification

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / "contracts"
SOLC_VERSION = "0.8.28"
REMAPPINGS = (
    f"@openzeppelin/contracts/={ROOT}/node_modules/@openzeppelin/contracts/",
    f"solady/={ROOT}/node_modules/solady/src/",
)
FAILING = {DetectorClassification.HIGH, DetectorClassification.MEDIUM}

# (detector, contract.function) -> why the finding is accepted.
ACCEPTED: dict[tuple[str, str], str] = {
    ("controlled-delegatecall", "TaskMarket._delegate"): (
        "the target is the immutable audit module TaskMarket deploys in its constructor, and every "
        "caller builds the data with abi.encodeCall of a fixed IMarketAudits function"
    ),
    ("weak-prng", "TaskMarket._resolve"): (
        "the audit draw is keccak(blockhash(commit block), taskId) by design (docs/protocol.md, the task lifecycle): "
        "unknown to the executor when it commits; the block-producer bias is documented"
    ),
}
# Contracts that run only by DELEGATECALL over the storage of another (module -> host): a state
# variable of their shared storage base that the module never writes is fine when the host does.
DELEGATED_MODULES = {"MarketAudits": "TaskMarket"}


def solc_path() -> str:
    """The pinned solc: the bridge installed by tools/install-solc.sh, or a native one."""
    candidate = Path.home() / ".solcx" / f"solc-v{SOLC_VERSION}"
    if candidate.exists():
        return str(candidate)
    raise SystemExit(
        f"solc {SOLC_VERSION} not found at {candidate}: run tools/install-solc.sh {SOLC_VERSION}"
    )


def sources() -> list[Path]:
    return sorted(p for p in CONTRACTS.rglob("*.sol") if ".cache" not in p.parts)


def compile_project() -> CryticCompile:
    ssj = SolcStandardJson()
    for remap in REMAPPINGS:
        ssj.add_remapping(remap)
    for path in sources():
        ssj.add_source_file(str(path))
    return CryticCompile(ssj, solc=solc_path(), solc_working_dir=str(ROOT))


def in_our_code(element: dict) -> bool:
    mapping = element.get("source_mapping") or {}
    filename = mapping.get("filename_absolute") or mapping.get("filename_relative") or ""
    return "node_modules" not in filename and ".cache" not in filename


def finding_key(result: dict) -> tuple[str, str]:
    elements = result.get("elements", [])
    fn = next((e for e in elements if e.get("type") == "function"), None)
    if fn is None:
        return result["check"], ""
    parent = fn.get("type_specific_fields", {}).get("parent", {}).get("name", "")
    return result["check"], f"{parent}.{fn.get('name', '')}"


def written_by(slither: Slither, contract_name: str) -> set[str]:
    (contract,) = slither.get_contract_from_name(contract_name)
    return {
        v.name for f in contract.functions_and_modifiers for v in f.all_state_variables_written()
    }


def module_state_written_by_host(slither: Slither, result: dict) -> bool:
    """An uninitialized-state finding about a delegated module's variable that its host writes."""
    if result["check"] != "uninitialized-state":
        return False
    variable = next((e for e in result["elements"] if e.get("type") == "variable"), None)
    if variable is None:
        return False
    # The shared variables are declared in a base of both; if the host writes one, the finding
    # can only be about the module.
    return any(variable["name"] in written_by(slither, host) for host in DELEGATED_MODULES.values())


def main() -> int:
    slither = Slither(compile_project())
    detectors = [
        d
        for d in vars(all_detectors).values()
        if isinstance(d, type) and issubclass(d, AbstractDetector)
    ]
    for detector in detectors:
        slither.register_detector(detector)
    results = [r for batch in slither.run_detectors() for r in batch]
    ours = [r for r in results if any(in_our_code(e) for e in r.get("elements", []))]
    failing, accepted, minor = [], [], Counter()
    for r in ours:
        impact = r["impact"]
        if impact in ("High", "Medium"):
            key = finding_key(r)
            if key in ACCEPTED:
                accepted.append((key, r))
            elif module_state_written_by_host(slither, r):
                name = next(e["name"] for e in r["elements"] if e.get("type") == "variable")
                ACCEPTED[key] = (
                    f"{name} is written by the host contract; the module runs on its storage"
                )
                accepted.append((key, r))
            else:
                failing.append((key, r))
        else:
            minor[(impact, r["check"])] += 1
    print(
        f"slither: {len(sources())} source files, {len(detectors)} detectors, "
        f"{len(ours)} findings in our code ({len(results) - len(ours)} in dependencies ignored)"
    )
    for (impact, check), n in sorted(minor.items()):
        print(f"  {impact.lower():13} {check:32} x{n}")
    for key, r in accepted:
        print(f"  accepted {r['impact'].lower()} {key[0]} in {key[1]}: {ACCEPTED[key]}")
    for key, r in failing:
        print(f"\nFAIL {r['impact']} {r['check']} ({key[1]}):\n{r['description'].strip()}")
    if failing:
        print(f"\n{len(failing)} high/medium finding(s)")
        return 1
    print("no high or medium finding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
