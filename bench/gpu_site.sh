# Sourced (`source bench/gpu_site.sh`) on a GPU machine without network, from the repository's root with .whl/ beside
# it (bench/gpu_wheels.sh fills it): installs the wheels into a private folder and links this tree's packages in as
# `rsample` (no build step, and never a stale copy), then exports PYTHONPATH so that bench/ scripts find both.
site=${RSAMPLE_CHECK_SITE:-/tmp/rsample-site}
python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
mkdir -p "$site/rsample"
ln -sfn "$PWD/workers" "$site/rsample/workers"
ln -sfn "$PWD/producer" "$site/rsample/producer"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
