"""deploy/k8s: schema-valid objects whose commands, ports, probes and Secrets fit together.

The schemas are the official Kubernetes OpenAPI schemas as JSON Schema, shipped inside the
kubernetes-validate package (no network). kubectl's built-in kustomize renders the kustomization
with throw-away keys made by bert-serving-keygen, and the rendered objects are validated too.
"""
from __future__ import annotations

import copy
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from deploy_support import (K8S, container_argv, engine_flags, generated_secrets, k8s_object,
                            kustomization, manifest_files, mounted_files, parse_command, resolve_port, resources,
                            run_keygen, secret_references, without_marker)

# The newest schemas the package ships, and an older release still in wide use.
K8S_VERSIONS = (kubernetes_validate.utils.latest_version(), '1.29.0')
FRONT, WORKERS = 'bert-serving-front', 'bert-serving-worker'
CLIENT_SERVICE, WORKER_SERVICE = 'bert-serving', 'bert-serving-workers'


def _pod(deployment: str) -> dict:
    return k8s_object('Deployment', deployment)['spec']['template']['spec']


def _container(deployment: str) -> dict:
    containers = _pod(deployment)['containers']
    assert len(containers) == 1, f'{deployment} should run one container'
    return containers[0]


def _args(deployment: str):
    return parse_command(container_argv(_container(deployment)), f'{deployment} (deploy/k8s)')


# -- schemas --------------------------------------------------------------------------------------
def test_every_listed_manifest_exists_and_every_manifest_is_listed():
    listed = {path.name for path in manifest_files()}
    on_disk = {path.name for path in K8S.glob('*.yaml')} - {'kustomization.yaml'}
    assert listed == on_disk, 'kustomization.yaml resources and the YAML files in deploy/k8s differ'


@pytest.mark.parametrize('version', K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version):
    objects = resources()
    assert {o['kind'] for o in objects} == {'Deployment', 'Service'}
    for obj in objects:
        # strict: unknown fields (a typo such as readinesProbe) fail too.
        kubernetes_validate.validate(without_marker(obj), version, strict=True)


def test_the_validator_catches_a_broken_manifest():
    """Guards the test above against a validator that accepts anything."""
    broken = copy.deepcopy(without_marker(k8s_object('Deployment', FRONT)))
    broken['spec']['template']['spec']['containers'][0]['readinesProbe'] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)
    broken = copy.deepcopy(without_marker(k8s_object('Service', CLIENT_SERVICE)))
    broken['spec']['ports'][0]['port'] = 'five'
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_kustomize_renders_valid_objects_with_generated_keys(tmp_path):
    """The whole kustomization, as `kubectl apply -k` would send it, with keys from our keygen."""
    kubectl = shutil.which('kubectl')
    assert kubectl, 'kubectl is not on PATH: install it (Debian package kubectl) to render deploy/k8s'
    work = tmp_path / 'k8s'
    shutil.copytree(K8S, work, ignore=shutil.ignore_patterns('secrets'))
    (work / 'secrets').mkdir()
    for name in ('server', 'worker', 'client'):
        run_keygen([str(work / 'secrets'), name])
    (work / 'secrets' / 'http-token').write_text('token-for-the-test\n')
    rendered = subprocess.run([kubectl, 'kustomize', str(work)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSIONS[0], strict=True)
    secrets = {o['metadata']['name'] for o in objects if o['kind'] == 'Secret'}
    assert len(secrets) == len(generated_secrets())
    for obj in objects:
        if obj['kind'] == 'Deployment':
            for name in secret_references(obj['spec']['template']['spec']):
                assert name in secrets, f'{obj["metadata"]["name"]} refers to Secret {name}, which is not rendered'


# -- commands and flags ---------------------------------------------------------------------------
def test_front_runs_bert_serving_start_as_a_pure_front():
    args = _args(FRONT)
    assert args.num_worker == 0, 'the front must leave all compute to the remote workers'
    assert args.port_worker is not None, 'without -port_worker remote workers cannot join'
    assert args.http_port is not None, 'the readiness probe needs the HTTP proxy'
    assert args.auth_dir and args.http_token_file, 'the front must run with Curve and an HTTP token'


def test_worker_runs_bert_serving_worker_against_the_worker_service():
    args = _args(WORKERS)
    service = k8s_object('Service', args.ip)  # -ip is the Service's DNS name
    assert service['metadata']['name'] == WORKER_SERVICE
    front = _args(FRONT)
    assert args.port_worker == front.port_worker
    # The front tells a worker its -port_worker_sink at registration; the worker reaches it at -ip too.
    assert {p['port'] for p in service['spec']['ports']} == {front.port_worker, front.port_worker_sink}


def test_front_and_workers_share_the_engine_flags():
    """A worker with other output-shaping flags would be refused by the front's fingerprint check."""
    front, worker = engine_flags(_args(FRONT)), engine_flags(_args(WORKERS))
    shared = front.keys() & worker.keys()
    assert {'max_seq_len', 'pooling_layer', 'pooling_strategy'} <= shared
    assert {k: front[k] for k in shared} == {k: worker[k] for k in shared}
    assert _container(FRONT)['image'] == _container(WORKERS)['image'], 'one image, so one bundled model'


# -- ports and probes -----------------------------------------------------------------------------
def test_container_ports_are_the_ports_of_the_flags():
    args = _args(FRONT)
    ports = {p['name']: p['containerPort'] for p in _container(FRONT)['ports']}
    # A remote worker registers on -port_worker and sends results to -port_worker_sink.
    worker_sink = args.port_worker_sink if args.port_worker_sink is not None else args.port_worker + 1
    assert ports == {'client': args.port, 'results': args.port_out, 'worker': args.port_worker,
                     'worker-sink': worker_sink, 'http': args.http_port}


def test_services_expose_the_front_ports_under_the_same_numbers():
    pod_labels = k8s_object('Deployment', FRONT)['spec']['template']['metadata']['labels']
    exposed = {}
    for name in (CLIENT_SERVICE, WORKER_SERVICE):
        spec = k8s_object('Service', name)['spec']
        assert spec['selector'].items() <= pod_labels.items(), f'Service {name} does not select the front'
        for port in spec['ports']:
            target = resolve_port(_container(FRONT), port.get('targetPort', port['port']))
            # Same number outside as inside: clients pass the server's own -port/-port_out/-http_port.
            assert port['port'] == target, f'Service {name} maps {port["port"]} to {target}'
            exposed[port['name']] = target
    ports = {p['name']: p['containerPort'] for p in _container(FRONT)['ports']}
    assert exposed == ports, 'every front port must be reachable through a Service, once'


def test_worker_service_routes_before_the_front_is_ready():
    """The front turns ready only after workers join through this Service: it must not wait for that."""
    assert k8s_object('Service', WORKER_SERVICE)['spec'].get('publishNotReadyAddresses') is True
    assert not k8s_object('Service', CLIENT_SERVICE)['spec'].get('publishNotReadyAddresses')


def test_front_readiness_probe_is_health_on_the_http_port():
    container = _container(FRONT)
    probe = container['readinessProbe']['httpGet']
    assert probe['path'] == '/health'
    assert resolve_port(container, probe['port']) == _args(FRONT).http_port
    assert 'httpHeaders' not in probe, '/health needs no token'
    # Liveness must not hang on /health: a front without workers is alive, only not ready.
    assert 'httpGet' not in container.get('livenessProbe', {})


def test_front_is_a_single_replica_replaced_not_rolled():
    spec = k8s_object('Deployment', FRONT)['spec']
    assert spec['replicas'] == 1, 'a client must reach the same front on both of its ports'
    assert spec['strategy']['type'] == 'Recreate'


# -- Secrets and files ----------------------------------------------------------------------------
def test_every_referenced_secret_is_generated_with_its_keys():
    generated = generated_secrets()
    for deployment in (FRONT, WORKERS):
        for name, keys in secret_references(_pod(deployment)).items():
            assert name in generated, f'{deployment} uses Secret {name}, which kustomization.yaml does not generate'
            missing = keys - generated[name].keys()
            assert not missing, f'{deployment} reads keys {missing} of Secret {name}, which it does not hold'


def test_secret_sources_are_keygen_files_kept_out_of_git():
    for name, keys in generated_secrets().items():
        for key, path in keys.items():
            assert path.startswith('secrets/'), f'{name}: {path} should live in deploy/k8s/secrets/'
    ignore = (K8S / 'secrets' / '.gitignore').read_text(encoding='utf-8').split()
    assert '*' in ignore, 'deploy/k8s/secrets/.gitignore must keep the keys out of git'
    # Curve files are what `bert-serving-keygen secrets NAME` writes: NAME.key and NAME.key_secret.
    curve = [k for keys in generated_secrets().values() for k in keys if k.endswith(('.key', '.key_secret'))]
    assert {k.rsplit('.', 1)[0] for k in curve} == {'server', 'worker', 'client'}


def test_front_auth_dir_holds_the_server_pair_and_authorized_keys():
    args = _args(FRONT)
    files = mounted_files(_pod(FRONT), _container(FRONT))
    auth_dir = args.auth_dir.rstrip('/')
    assert f'{auth_dir}/server.key_secret' in files
    # Client keys (client ports) and worker keys (worker ports) live in folders of their own.
    for folder, expected in (('authorized', {'client.key'}), ('authorized_workers', {'worker.key'})):
        keys = {path.rsplit('/', 1)[1] for path in files if path.startswith(f'{auth_dir}/{folder}/')}
        assert keys == expected, f'{auth_dir}/{folder}/ should hold {expected}, not {keys}'
        # Secret halves never sit among the public keys the front lets in.
        assert not any(p.startswith(f'{auth_dir}/{folder}/') and p.endswith('_secret') for p in files)
    assert args.http_token_file in files, '-http_token_file must be a file of the token Secret'


def test_the_mounted_keys_let_the_worker_in_on_the_worker_ports_only(tmp_path):
    """The front's key files, laid out as its volume mounts them (keys from our keygen), pass the
    server's own -auth_dir checks; the workers' key is a worker key, and the client's a client key."""
    from bert_serving.client.security import load_keypair, load_public_key
    from bert_serving.server.security import AuthConfig

    made = tmp_path / 'made'
    for name in ('server', 'worker', 'client'):
        run_keygen([str(made), name])
    args = _args(FRONT)
    auth_dir = args.auth_dir.rstrip('/')
    root = tmp_path / 'front'
    for path, (_, key) in mounted_files(_pod(FRONT), _container(FRONT)).items():
        if path.startswith(f'{auth_dir}/'):
            target = root / path[len(auth_dir) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((made / key).read_bytes())
    mounted = copy.copy(args)
    mounted.auth_dir = str(root)
    auth = AuthConfig.from_namespace(mounted)
    auth.check_worker_keys()  # with -port_worker, the server refuses to start without a worker key
    worker_key = _args(WORKERS).client_key.rsplit('/', 1)[1]  # the pair the workers hold
    worker_public = load_keypair(made / worker_key, 'worker')[0]
    client_public = load_public_key(made / 'client.key', 'client')
    assert worker_public in auth.worker_keys() and worker_public not in auth.authorized_keys()
    assert client_public in auth.authorized_keys() and client_public not in auth.worker_keys()


def test_worker_key_files_are_mounted():
    args = _args(WORKERS)
    files = mounted_files(_pod(WORKERS), _container(WORKERS))
    assert args.server_key in files and files[args.server_key][1] == 'server.key'
    assert args.client_key in files and files[args.client_key][1] == 'worker.key_secret'
    assert not any(key == 'server.key_secret' for _, key in files.values()), 'workers must not hold the server secret'


def test_pods_run_as_the_images_non_root_user():
    for deployment in (FRONT, WORKERS):
        context = _pod(deployment)['securityContext']
        assert context['runAsNonRoot'] is True and context['runAsUser'] == 10001
        # Secret files are 0440 root:fsGroup, so the server's user must be in that group.
        assert context['fsGroup'] == 10001


def test_resources_are_sized():
    for deployment in (FRONT, WORKERS):
        resources_ = _container(deployment)['resources']
        assert {'cpu', 'memory'} <= resources_['requests'].keys() <= resources_['limits'].keys()
    worker = _container(WORKERS)['resources']
    # docs/benchmark-history.md: 1,710 MiB of RSS per worker; the request must cover it.
    assert worker['requests']['memory'] == '2Gi'
    assert worker['requests']['cpu'] == worker['limits']['cpu'], 'whole, equal CPUs: Guaranteed QoS'


def test_kustomization_is_a_kustomization():
    k = kustomization()
    assert k['apiVersion'] == 'kustomize.config.k8s.io/v1beta1' and k['kind'] == 'Kustomization'
    images = {i['name'] for i in k.get('images', [])}
    for deployment in (FRONT, WORKERS):
        assert _container(deployment)['image'].split(':')[0] in images
