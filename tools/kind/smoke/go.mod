module modship.local/tools/kind/smoke

go 1.24.0
