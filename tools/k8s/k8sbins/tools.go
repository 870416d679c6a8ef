//go:build tools

// Package tools records the commands built by tools/k8s/build.sh so that `go mod tidy` keeps
// their dependencies in go.mod/go.sum. It is never compiled.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
