#!/usr/bin/env bash
# Build the BIDS App image with podman and run it the way users run it (docs/container.md).
#
#   ci/container.sh [all|setup|build|test|clean]     (default: all = setup, build, test)
#
# setup  installs podman and its helpers when missing (apt, needs root), writes podman's
#        configuration under $QSM_CI_WORK (never /etc) and makes the debian:bookworm-slim base
#        image with debootstrap when the store lacks it;
# build  builds ./Dockerfile (--pull=never, --network host; the host's CA bundle and a pip.conf
#        naming it are mounted read-only for the build only, for TLS-intercepting proxies);
# test   runs the image read-only, without network, as a non-root uid with no passwd entry:
#        --version, the simulator (2+2 at 2 mm), two participant containers at once on one output
#        folder (one Docker-style, one Apptainer-style: read-only HOME, empty environment), the
#        group level, then checks the outputs, their modes, the provenance and the TFCE kernel;
# clean  removes everything this script made: the work folder (image store, base image, configs)
#        and the apt packages it installed.
#
# Settings (environment):
#   QSM_CI_ROOT           the checkout (default: the one holding this script)
#   QSM_CI_WORK           podman's configuration, image store and the run folders (/var/tmp/qsm-podman)
#   QSM_CI_IMAGE          the image's name (localhost/qsm-bids:ci)
#   QSM_CI_BUILD_CA       CA bundle mounted for pip at build time (/etc/ssl/certs/ca-certificates.crt;
#                         empty: none)
#   QSM_CI_MIRROR         Debian mirror for debootstrap (http://deb.debian.org/debian)
#   QSM_CI_PERMUTATIONS   group-level permutations (100)
#   QSM_CI_KEEP_RUN       0: the run folder is removed on success, kept on failure; 1: always kept
#   QSM_CI_ENGINE         podman; docker: an existing Docker daemon, no setup (CircleCI)
# test needs root: it gives the run folders to a random uid.
set -euo pipefail

ROOT=${QSM_CI_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
WORK=${QSM_CI_WORK:-/var/tmp/qsm-podman}
IMAGE=${QSM_CI_IMAGE:-localhost/qsm-bids:ci}
BASE=docker.io/library/debian:bookworm-slim
CA=${QSM_CI_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}
MIRROR=${QSM_CI_MIRROR:-http://deb.debian.org/debian}
N_PERM=${QSM_CI_PERMUTATIONS:-100}
KEEP_RUN=${QSM_CI_KEEP_RUN:-0}
ENGINE=${QSM_CI_ENGINE:-podman}
PACKAGES=(podman runc debootstrap uidmap fuse-overlayfs slirp4netns)

export CONTAINERS_CONF=$WORK/conf/containers.conf
export CONTAINERS_STORAGE_CONF=$WORK/conf/storage.conf
T0=$SECONDS
RUN_DIR=
CONTAINERS=()
FIGURES=()

say() { printf 'container.sh: %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }
figure() { FIGURES+=("$1"); say "$1"; }
pm() { "$ENGINE" "$@"; }
have_image() { pm image inspect "$1" > /dev/null 2>&1; }

on_exit() {
    local rc=$?
    for c in "${CONTAINERS[@]}"; do pm rm -f "$c" >/dev/null 2>&1 || true; done
    if [[ -n $RUN_DIR && -d $RUN_DIR ]]; then
        if [[ $rc -eq 0 && $KEEP_RUN != 1 ]]; then rm -rf "$RUN_DIR"; else say "run folder kept: $RUN_DIR"; fi
    fi
    ((${#FIGURES[@]})) && printf '%s\n' "${FIGURES[@]}" > "$WORK/figures.txt" 2>/dev/null || true
    exit $rc
}
trap on_exit EXIT

# --------------------------------------------------------------------------- setup
setup() {
    local t=$SECONDS missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    mkdir -p "$WORK/conf"
    if ((${#missing[@]})); then
        [[ $(id -u) == 0 ]] || die "podman is missing: apt-get install ${missing[*]} (as root), then rerun"
        say "installing ${missing[*]}"
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${missing[@]}"; } > "$WORK/apt.log" 2>&1 || die "apt-get failed: see $WORK/apt.log"
        printf '%s\n' "${missing[@]}" >> "$WORK/installed-packages"
    fi
    # crun fails on this host's cgroup layout and the sandbox cannot raise rlimits: runc, fixed ulimits.
    cat > "$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
    cat > "$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/runroot"
[storage.options.overlay]
mount_program = "/usr/bin/fuse-overlayfs"
EOF
    if ! have_image "$BASE"; then
        local rootfs=$WORK/rootfs
        rm -rf "$rootfs"
        say "making $BASE with debootstrap (minbase) from $MIRROR"
        debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
            || die "debootstrap failed: see $WORK/debootstrap.log"
        # what the slim image leaves out: documentation, manuals, locales, apt lists
        mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
        printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
            'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
            'path-exclude /usr/share/locale/*' 'path-exclude /usr/share/groff/*' \
            'path-exclude /usr/share/lintian/*' > "$rootfs/etc/dpkg/dpkg.cfg.d/slim"
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log
        tar -C "$rootfs" -c . | pm import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["bash"]' - "$BASE" >> "$WORK/debootstrap.log" 2>&1
        rm -rf "$rootfs"
    fi
    figure "setup_s=$((SECONDS - t))"
}

# --------------------------------------------------------------------------- build
build() {
    local t=$SECONDS mounts=()
    [[ $ENGINE == podman ]] || die "build: podman only (with Docker: docker build -t $IMAGE .)"
    if [[ -n $CA && -s $CA ]]; then
        # A side path, not the image's own bundle (ca-certificates' post-install rewrites that one).
        printf '[global]\ncert = /run/qsm-ci/host-ca.crt\n' > "$WORK/conf/pip.conf"
        mounts=(-v "$CA:/run/qsm-ci/host-ca.crt:ro" -v "$WORK/conf/pip.conf:/etc/pip.conf:ro")
    fi
    say "building $IMAGE from $ROOT/Dockerfile (log: $WORK/build.log)"
    if ! pm build --network host --pull=never "${mounts[@]}" -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT" \
            > "$WORK/build.log" 2>&1; then
        tail -n 40 "$WORK/build.log" >&2
        die "image build failed (full log: $WORK/build.log)"
    fi
    figure "build_s=$((SECONDS - t))"
    local bytes
    bytes=$(pm image inspect --format '{{.Size}}' "$IMAGE")
    figure "image_size_MB=$((bytes / 1000000))"
}

# --------------------------------------------------------------------------- test
test_image() {
    local t uid gid
    have_image "$IMAGE" || die "no image $IMAGE: run ci/container.sh build"
    mkdir -p "$WORK"
    RUN_DIR=$(mktemp -d "$WORK/run.XXXXXX")
    chmod 755 "$RUN_DIR"
    # An arbitrary uid/gid, as on a cluster: the image has no passwd entry for it.
    uid=$((20000 + RANDOM % 40000)); gid=$((20000 + RANDOM % 40000))
    local data=$RUN_DIR/data out=$RUN_DIR/out home=$RUN_DIR/home
    mkdir -p "$data" "$out" "$home/.local/lib/python3.11/site-packages"
    # A user site that must never be imported (PYTHONNOUSERSITE), in a HOME that is read-only.
    echo 'raise SystemExit("user site-packages of HOME was imported")' \
        > "$home/.local/lib/python3.11/site-packages/usercustomize.py"
    chown -R "$uid:$gid" "$data" "$out" "$home"
    touch "$RUN_DIR/start"

    local base=(run --rm --read-only --tmpfs /tmp:rw,mode=1777 --network none --user "$uid:$gid")
    # podman adds writable /run and /var/tmp to --read-only unless told not to; Docker does not
    [[ $ENGINE == podman ]] && base+=(--read-only-tmpfs=false)
    local docker=("${base[@]}")
    # Apptainer's way: HOME bound read-only and set, nothing of the host's environment, cwd in HOME.
    local apptainer=("${base[@]}" -v "$home:/home/qsmci:ro" -e HOME=/home/qsmci -w /home/qsmci)
    local io=(-v "$data/bids:/data:ro" -v "$out:/out")

    t=$SECONDS
    local got want
    got=$(pm "${docker[@]}" "$IMAGE" --version)
    want=$(tr -d '[:space:]' < "$ROOT/version")
    [[ $got == "$want" ]] || die "--version printed '$got', the version file says '$want'"
    figure "version_s=$((SECONDS - t))"

    # Lean and clean: no compiler, no pip, no pip cache, no test suites, nothing of the build's CA.
    pm "${docker[@]}" --entrypoint /bin/sh "$IMAGE" -c '
        set -e
        for c in cc gcc pip pip3; do if command -v $c >/dev/null; then echo "image has $c"; exit 1; fi; done
        test ! -s /etc/pip.conf || { echo "image has /etc/pip.conf"; exit 1; }
        test ! -e /run/qsm-ci/host-ca.crt || [ ! -s /run/qsm-ci/host-ca.crt ] || { echo "image has the build CA"; exit 1; }
        test ! -d /root/.cache/pip || { echo "image has a pip cache"; exit 1; }
        n=$(find /opt/venv -type d -name tests -path "*/site-packages/*" | wc -l)
        test "$n" = 0 || { echo "image has $n test folders"; exit 1; }
        python -P -m qsm_bids.group._tfce_kernel --check >/dev/null
    ' || die "image hygiene check failed (as uid $uid)"

    t=$SECONDS
    say "simulator: 2 patients + 2 controls at 2 mm (Apptainer-style)"
    pm "${apptainer[@]}" -v "$data:/data" --entrypoint qsm-bids-simulate "$IMAGE" \
        /data/bids --n-patients 2 --n-controls 2 --voxel-size 2 2 2 --n-jobs 1 \
        > "$RUN_DIR/simulate.log" 2>&1 || { tail -n 30 "$RUN_DIR/simulate.log" >&2; die "simulator failed"; }
    figure "simulate_s=$((SECONDS - t))"
    mapfile -t subjects < <(cd "$data/bids" && ls -d sub-* | sed 's/^sub-//')
    ((${#subjects[@]} == 4)) || die "the simulator wrote ${#subjects[@]} subjects, expected 4"

    t=$SECONDS
    say "participant level: sub-${subjects[0]} sub-${subjects[2]} (Docker-style) and" \
        "sub-${subjects[1]} sub-${subjects[3]} (Apptainer-style) at the same time on one output folder"
    CONTAINERS+=(qsm-ci-$$-a qsm-ci-$$-b)
    pm "${docker[@]}" --name "qsm-ci-$$-a" "${io[@]}" "$IMAGE" /data /out participant \
        --participant-label "${subjects[0]}" "${subjects[2]}" --registration fast --n-cpus 1 \
        > "$RUN_DIR/participant-a.log" 2>&1 &
    local pa=$!
    pm "${apptainer[@]}" --name "qsm-ci-$$-b" "${io[@]}" "$IMAGE" /data /out participant \
        --participant-label "${subjects[1]}" "${subjects[3]}" --registration fast --n-cpus 1 \
        > "$RUN_DIR/participant-b.log" 2>&1 &
    local pb=$! ra=0 rb=0
    wait "$pa" || ra=$?
    wait "$pb" || rb=$?
    ((ra == 0)) || { tail -n 30 "$RUN_DIR/participant-a.log" >&2; die "participant container A exited $ra"; }
    ((rb == 0)) || { tail -n 30 "$RUN_DIR/participant-b.log" >&2; die "participant container B exited $rb"; }
    figure "participants_concurrent_s=$((SECONDS - t))"

    t=$SECONDS
    say "group level: $N_PERM permutations (Apptainer-style)"
    pm "${apptainer[@]}" "${io[@]}" "$IMAGE" /data /out group --n-permutations "$N_PERM" --n-cpus 2 \
        > "$RUN_DIR/group.log" 2>&1 || { tail -n 30 "$RUN_DIR/group.log" >&2; die "group level failed"; }
    figure "group_s=$((SECONDS - t))"

    check_outputs "$out" "$uid" "${subjects[@]}"
    compare_with_pip "$data/bids" "$out" "${subjects[0]}"
    [[ -z $(find "$home" -newer "$RUN_DIR/start" -print -quit) ]] || die "something was written in HOME"
    if grep -hiE "read-only file system|not a writable directory|permission denied" "$RUN_DIR"/*.log; then
        die "a container tried to write outside /tmp and the output folder (lines above)"
    fi
    figure "test_s=$((SECONDS - t0_test))"
}

check_outputs() {
    local out=$1 uid=$2; shift 2
    local s missing=()
    for s in "$@"; do
        for f in "sub-${s}_Chimap.nii.gz" "sub-${s}_Chimap.json" "sub-${s}_desc-brain_mask.nii.gz" \
                 "sub-${s}_desc-local_fieldmap.nii.gz"; do
            [[ -s $out/sub-$s/anat/$f ]] || missing+=("sub-$s/anat/$f")
        done
        compgen -G "$out/sub-$s/anat/sub-${s}_space-*_Chimap.nii.gz" > /dev/null || missing+=("sub-$s space-*_Chimap")
        compgen -G "$out/sub-$s/anat/sub-${s}_atlas-*_stat-median_Chimap.tsv" > /dev/null || missing+=("sub-$s atlas TSV")
        compgen -G "$out/sub-${s}*.html" > /dev/null || missing+=("sub-$s report page")
    done
    for f in group/report.html group/roi_stats.tsv group/demographics.tsv; do
        [[ -s $out/$f ]] || missing+=("$f")
    done
    for k in t tfce pfwe; do
        compgen -G "$out/group/contrast-*_stat-${k}_statmap.nii.gz" > /dev/null || missing+=("group stat-$k map")
    done
    ((${#missing[@]} == 0)) || die "missing outputs: ${missing[*]}"
    grep -q 'data:image/' "$out/group/report.html" || die "group/report.html embeds no figure"

    python3 - "$out/dataset_description.json" "$(tr -d '[:space:]' < "$ROOT/version")" <<'EOF' \
        || die "dataset_description.json does not record the app and its container"
import json, sys
d = json.load(open(sys.argv[1]))
g = d["GeneratedBy"][0]
assert d["DatasetType"] == "derivative", d
assert g["Name"] == "qsm-bids" and g["Version"] == sys.argv[2], g
assert g.get("Container", {}).get("Type"), g
EOF
    # Readable by the lab's group and others (0644 files, 0755 folders), owned by the run's uid.
    local bad
    bad=$(find "$out" \( -type f ! -perm -0044 \) -o \( -type d ! -perm -0055 \) | head -n 5)
    [[ -z $bad ]] || die "outputs not readable by group/others, e.g. $(stat -c '%a %n' $bad | tr '\n' ' ')"
    bad=$(find "$out" ! -uid "$uid" | head -n 5)
    [[ -z $bad ]] || die "outputs not owned by the container's uid $uid: $bad"
    # The exact compiled max-TFCE kernel, not the tfce package fallback.
    grep -q "TFCE max kernel: compiled exact kernel" "$out"/logs/group_* \
        || die "the group log does not show the compiled TFCE max kernel (logs/group_*)"
    if grep -q "compiled TFCE max kernel unavailable\|TFCE max kernel: the tfce package" "$out"/logs/group_*; then
        die "the group level fell back to the tfce package"
    fi
}

# The image's participant outputs equal those of the pip install (the checkout's .venv) on one subject.
compare_with_pip() {
    local bids=$1 out=$2 s=$3 py=${QSM_CI_PIP_PYTHON:-$ROOT/.venv/bin/python} t=$SECONDS
    if [[ ! -x $py ]] || ! "$py" -c "import qsm_bids" 2> /dev/null; then
        say "no pip install of qsm_bids at $py: the comparison with it is skipped"
        return 0
    fi
    say "participant level of sub-$s with the pip install ($py), to compare"
    "$py" "$ROOT/run.py" "$bids" "$RUN_DIR/out-pip" participant --participant-label "$s" \
        --registration fast --n-cpus 1 > "$RUN_DIR/participant-pip.log" 2>&1 \
        || { tail -n 30 "$RUN_DIR/participant-pip.log" >&2; die "the pip install's participant level failed"; }
    "$py" - "$out/sub-$s/anat" "$RUN_DIR/out-pip/sub-$s/anat" <<'EOF' || die "the image's outputs differ from the pip install's"
import sys
from pathlib import Path
import nibabel as nib
import numpy as np
import pandas as pd
img, pip = Path(sys.argv[1]), Path(sys.argv[2])
ok = True
# Registration-independent maps (same libraries, same seeds): equal up to float32 rounding.
for pattern in ("*_Chimap.nii.gz", "*_desc-local_fieldmap.nii.gz"):
    for a in sorted(img.glob(pattern)):
        if "_space-" in a.name:
            continue
        x, y = (np.asarray(nib.load(p).dataobj, dtype=np.float64) for p in (a, pip / a.name))
        d = float(np.abs(x - y).max())
        ok &= d <= 1e-5
        print(f"container.sh: image vs pip install, {a.name}: max |difference| {d:.2e} ppm", file=sys.stderr)
# ANTs is not bitwise reproducible run to run: template-space results agree closely, not exactly.
for a in sorted(img.glob("*_space-*_Chimap.nii.gz")) + sorted(img.glob("*_stat-median_Chimap.tsv")):
    if a.suffix == ".tsv":
        x, y = pd.read_csv(a, sep="\t"), pd.read_csv(pip / a.name, sep="\t")
        assert list(x.region) == list(y.region) and list(x.hemisphere) == list(y.hemisphere), a.name
        x, y = x.median_ppm.to_numpy(), y.median_ppm.to_numpy()
    else:
        x, y = (np.asarray(nib.load(p).dataobj, dtype=np.float64).ravel() for p in (a, pip / a.name))
    r = float(np.corrcoef(x, y)[0, 1])
    ok &= r >= 0.99
    print(f"container.sh: image vs pip install, {a.name}: correlation {r:.4f}, "
          f"max |difference| {np.abs(x - y).max():.2e} ppm", file=sys.stderr)
assert ok, "the image's outputs differ from the pip install's (lines above)"
EOF
    figure "pip_participant_s=$((SECONDS - t))"
}

# --------------------------------------------------------------------------- clean
clean() {
    if [[ -f $CONTAINERS_STORAGE_CONF ]] && command -v podman > /dev/null; then
        pm rmi -f "$IMAGE" "$BASE" > /dev/null 2>&1 || true
        pm system reset -f > /dev/null 2>&1 || true
    fi
    if [[ -f $WORK/installed-packages ]]; then
        mapfile -t pkgs < "$WORK/installed-packages"
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -q "${pkgs[@]}" && apt-get autoremove -y -q
    fi
    rm -rf "$WORK"
}

t0_test=$SECONDS
case "${1:-all}" in
    all) setup; build; t0_test=$SECONDS; test_image ;;
    setup) setup ;;
    build) setup; build ;;
    test) [[ $ENGINE != podman || -f $CONTAINERS_CONF ]] || setup; test_image ;;
    clean) clean; exit 0 ;;
    *) die "usage: ci/container.sh [all|setup|build|test|clean]" ;;
esac
figure "container_sh_total_s=$((SECONDS - T0))"
say "OK: $IMAGE built and run as users run it ($WORK/figures.txt)"
