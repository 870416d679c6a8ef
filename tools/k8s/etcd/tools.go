//go:build tools

// Package tools records the etcd server command built by tools/k8s/build.sh. It is never compiled.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
