# Sourced by run.sh and meta_ab.sh on the GPU machine: `kit` installs the device kit (../shared/device/setup.sh,
# carried as .device-kit) into /tmp/site. Its stdlib stand-in for pypcre (written when pypcre does not build there)
# lacks Flag.CASELESS, which gptqmodel's Marlin path reads (2026-12-01: "type object 'Flag' has no attribute
# 'CASELESS'"): added after every setup.sh.
kit() {
  source .device-kit/setup.sh
  local f=/tmp/site/pcre/__init__.py
  if [ -f "$f" ] && ! grep -q CASELESS "$f"; then printf 'Flag.CASELESS = _re.IGNORECASE\n' >> "$f"; fi
}
