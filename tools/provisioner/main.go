// Command provisioner is the dynamic volume provisioner of the test cluster's real node: the
// StorageClass `local` (the cluster's default) names it, and it gives every claim of that class
// a directory of its own under -dir, as a `local` PersistentVolume pinned to the node that the
// scheduler picked (WaitForFirstConsumer). It runs on the host, which is the node, so it makes
// and removes the directories itself. With reclaimPolicy Delete, a released volume's directory
// is removed with everything the pods wrote, and the library deletes the PersistentVolume.
//
// The directories are world-writable, so that pods of any uid can write into them; the kubelet
// also gives a `local` volume to the pod's fsGroup, as it does on a real cluster.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

type localDirs struct {
	// dir holds one directory per volume, named after it.
	dir string
	// node is the only node whose volumes live under dir (this machine).
	node string
}

func (p *localDirs) Provision(_ context.Context, o controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	if o.SelectedNodeName != "" && o.SelectedNodeName != p.node {
		return nil, controller.ProvisioningReschedule,
			fmt.Errorf("volumes of this class live on node %s, not on %s", p.node, o.SelectedNodeName)
	}
	path := filepath.Join(p.dir, o.PVName)
	if err := os.MkdirAll(path, 0o777); err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	// Past the umask: writable by any uid, as the claim's pods run as non-root users.
	if err := os.Chmod(path, 0o777); err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	reclaim := v1.PersistentVolumeReclaimDelete
	if o.StorageClass.ReclaimPolicy != nil {
		reclaim = *o.StorageClass.ReclaimPolicy
	}
	filesystem := v1.PersistentVolumeFilesystem
	return &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: o.PVName},
		Spec: v1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: reclaim,
			AccessModes:                   o.PVC.Spec.AccessModes,
			VolumeMode:                    &filesystem,
			// A directory has no size of its own: the claim's request is what it was given.
			Capacity: v1.ResourceList{
				v1.ResourceStorage: o.PVC.Spec.Resources.Requests[v1.ResourceStorage],
			},
			MountOptions: o.StorageClass.MountOptions,
			PersistentVolumeSource: v1.PersistentVolumeSource{
				Local: &v1.LocalVolumeSource{Path: path},
			},
			NodeAffinity: &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{
				NodeSelectorTerms: []v1.NodeSelectorTerm{{MatchExpressions: []v1.NodeSelectorRequirement{{
					Key: "kubernetes.io/hostname", Operator: v1.NodeSelectorOpIn, Values: []string{p.node},
				}}}},
			}},
		},
	}, controller.ProvisioningFinished, nil
}

func (p *localDirs) Delete(_ context.Context, pv *v1.PersistentVolume) error {
	// Only what Provision made: a directory directly under dir.
	if pv.Spec.Local == nil || filepath.Dir(pv.Spec.Local.Path) != p.dir ||
		filepath.Base(pv.Spec.Local.Path) != pv.Name {
		return &controller.IgnoredError{Reason: "the volume is not a directory of " + p.dir}
	}
	if err := os.RemoveAll(pv.Spec.Local.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "the cluster's admin kubeconfig")
	dir := flag.String("dir", "", "the directory that holds one directory per volume")
	node := flag.String("node", "", "the node (its kubernetes.io/hostname label) whose disk -dir is")
	name := flag.String("name", "abc-operator.dev/local", "the provisioner's name, as StorageClasses give it")
	klog.InitFlags(nil)
	flag.Parse()
	if *kubeconfig == "" || *dir == "" || *node == "" {
		klog.Exit("-kubeconfig, -dir and -node are required")
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		klog.Exit(err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		klog.Exit(err)
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Exit(err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		klog.Exit(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	controller.NewProvisionController(ctx, client, *name, &localDirs{dir: abs, node: *node},
		// One provisioner per cluster: no lease to take first.
		controller.LeaderElection(false),
		// A PersistentVolume deleted by hand still has its directory removed first.
		controller.AddFinalizer(true),
	).Run(ctx)
}
