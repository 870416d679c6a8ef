"""Pure registry logic: module version records, content digests, compatibility of contracts."""
