//go:build tools

// Package tools pins the etcd commands for `go mod tidy`; nothing imports it.
package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
