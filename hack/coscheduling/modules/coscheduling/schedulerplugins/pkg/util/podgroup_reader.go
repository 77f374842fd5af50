/*
Copyright 2026 The kubetune Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

// kubetune: this file replaces scheduler-plugins' client_util.go (NewClientWithCachedReader, a
// controller-runtime client over a controller-runtime cache). controller-runtime v0.22.3, the version
// scheduler-plugins v0.34.1-devel requires, does not compile against client-go v0.36
// (cache.ResourceEventHandlerRegistration gained HasSyncedChecker), and the plugin only ever Gets PodGroups
// through it, so a client-go dynamic informer does the same job with packages kube-scheduler already uses.

package util

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"kubetune.local/coscheduling/schedulerplugins/apis/scheduling/v1alpha1"
)

// PodGroupReader is what the plugin needs of a client: PodGroups by namespace and name, from a cache.
type PodGroupReader interface {
	// Get fills pg with the PodGroup key names; a missing one is a NotFound API error.
	Get(ctx context.Context, key types.NamespacedName, pg *v1alpha1.PodGroup) error
}

type informerPodGroupReader struct {
	lister cache.GenericLister
}

// NewPodGroupReader starts an informer on scheduling.x-k8s.io/v1alpha1 PodGroups and returns a reader
// of its cache once it has synced (like controller-runtime's cache, it waits for the PodGroup CRD).
func NewPodGroupReader(ctx context.Context, config *rest.Config) (PodGroupReader, error) {
	client, err := dynamic.NewForConfig(config)
	if err != nil {
		return nil, err
	}
	factory := dynamicinformer.NewDynamicSharedInformerFactory(client, 0)
	informer := factory.ForResource(v1alpha1.SchemeGroupVersion.WithResource("podgroups"))
	factory.Start(ctx.Done())
	for resource, synced := range factory.WaitForCacheSync(ctx.Done()) {
		if !synced {
			return nil, fmt.Errorf("failed to sync the cache of %v", resource)
		}
	}
	return &informerPodGroupReader{lister: informer.Lister()}, nil
}

func (r *informerPodGroupReader) Get(_ context.Context, key types.NamespacedName, pg *v1alpha1.PodGroup) error {
	obj, err := r.lister.ByNamespace(key.Namespace).Get(key.Name)
	if err != nil {
		return err
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return fmt.Errorf("PodGroup %v: unexpected %T in the informer cache", key, obj)
	}
	return runtime.DefaultUnstructuredConverter.FromUnstructured(u.UnstructuredContent(), pg)
}
