//go:build tools

// Package tools records the command built by tools/k8s/argo.sh so that `go mod tidy` keeps its
// dependencies in go.mod/go.sum. It is never compiled.
package tools

import (
	_ "github.com/argoproj/argo-rollouts/cmd/rollouts-controller"
)
