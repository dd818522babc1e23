{{/* Chart name, or nameOverride. */}}
{{- define "pop3proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: 63 characters at most (DNS label limit of some Kubernetes names). */}}
{{- define "pop3proxy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "pop3proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels (pass a dict: ctx = root context, component = component name). */}}
{{- define "pop3proxy.labels" -}}
helm.sh/chart: {{ include "pop3proxy.chart" .ctx }}
{{ include "pop3proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: pop3proxy
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: immutable once deployed (pass a dict: ctx, component). */}}
{{- define "pop3proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pop3proxy.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* metadata.annotations (extra + commonAnnotations) on a new line, nothing when empty; call as {{- include ... }}. */}}
{{- define "pop3proxy.annotations" -}}
{{- $a := merge (deepCopy (.extra | default dict)) (deepCopy (.ctx.Values.commonAnnotations | default dict)) }}
{{- if $a }}
{{ printf "annotations:\n%s" (toYaml $a | indent 2) | indent 2 }}
{{- end }}
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "pop3proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pop3proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference from {registry, repository, tag, digest}; pass a dict: image, default (tag). */}}
{{- define "pop3proxy.image" -}}
{{- $ref := .image.repository }}
{{- if .image.registry }}{{ $ref = printf "%s/%s" .image.registry .image.repository }}{{ end }}
{{- if .image.digest }}
{{- printf "%s@%s" $ref .image.digest }}
{{- else }}
{{- printf "%s:%s" $ref (toString (.image.tag | default .default)) }}
{{- end }}
{{- end }}

{{/* Redis URL the proxy uses: config.directory.redis_url, else the bundled Service, else redis.external.url. */}}
{{- define "pop3proxy.redisUrl" -}}
{{- if eq .Values.redis.mode "bundled" }}
{{- printf "redis://%s-redis:6379/0" (include "pop3proxy.fullname" .) }}
{{- else }}
{{- .Values.redis.external.url }}
{{- end }}
{{- end }}

{{/* The pop3proxy.yaml document: .Values.config with directory.redis_url filled in. */}}
{{- define "pop3proxy.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $dir := deepCopy (get $cfg "directory" | default dict) }}
{{- if and (eq (toString ($dir.store | default "redis")) "redis") (not $dir.redis_url) }}
{{- $_ := set $dir "redis_url" (include "pop3proxy.redisUrl" .) }}
{{- end }}
{{- $_ := set $cfg "directory" $dir }}
{{- toYaml $cfg }}
{{- end }}

{{/* Port number at the end of "host:port" (a string), or "" . */}}
{{- define "pop3proxy.addressPort" -}}
{{- $parts := splitList ":" (toString .) }}
{{- if gt (len $parts) 1 }}{{ last $parts }}{{ end }}
{{- end }}

{{/* Duration such as "30s", "2m" or 45 -> seconds (integer). */}}
{{- define "pop3proxy.seconds" -}}
{{- $d := toString . }}
{{- if hasSuffix "ms" $d }}{{ 0 }}
{{- else if hasSuffix "m" $d }}{{ mul (trimSuffix "m" $d | atoi) 60 }}
{{- else if hasSuffix "h" $d }}{{ mul (trimSuffix "h" $d | atoi) 3600 }}
{{- else }}{{ trimSuffix "s" $d | atoi }}
{{- end }}
{{- end }}

{{/* True ("true") when the listener named "pop3" expects a PROXY protocol header. */}}
{{- define "pop3proxy.pop3ProxyProtocol" -}}
{{- range .Values.config.listeners }}
{{- if and (eq (toString .name) "pop3") .proxy_protocol }}true{{ end }}
{{- end }}
{{- end }}

{{/* Collect every values error and fail once, with a hint for each. */}}
{{- define "pop3proxy.validateValues" -}}
{{- $errors := list }}
{{- $ports := list (toString .Values.containerPorts.pop3) (toString .Values.containerPorts.pop3s) }}
{{- $needTLS := false }}
{{- range .Values.config.listeners }}
{{- $p := include "pop3proxy.addressPort" .address }}
{{- if not (has $p $ports) }}
{{- $errors = append $errors (printf "config.listeners[%s].address %q: the port must be containerPorts.pop3 (%v) or containerPorts.pop3s (%v)" (toString .name) (toString .address) $.Values.containerPorts.pop3 $.Values.containerPorts.pop3s) }}
{{- end }}
{{- if ne (toString (.tls | default "none")) "none" }}{{ $needTLS = true }}{{ end }}
{{- end }}
{{- $mp := include "pop3proxy.addressPort" (dig "metrics" "address" "0.0.0.0:9110" .Values.config) }}
{{- if ne $mp (toString .Values.containerPorts.metrics) }}
{{- $errors = append $errors (printf "config.metrics.address port %s differs from containerPorts.metrics (%v): probes and scraping would miss it" $mp .Values.containerPorts.metrics) }}
{{- end }}
{{- if and $needTLS (not .Values.tls.existingSecret) }}
{{- $errors = append $errors "tls.existingSecret is empty but a listener uses TLS: --set tls.existingSecret=<kubernetes.io/tls Secret>" }}
{{- end }}
{{- $drain := include "pop3proxy.seconds" (dig "timeouts" "drain" "30s" .Values.config) | atoi }}
{{- $need := add $drain .Values.preStopSleepSeconds }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $need) }}
{{- $errors = append $errors (printf "terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + config.timeouts.drain (%v s), or sessions are killed mid-drain: --set terminationGracePeriodSeconds=%v" .Values.terminationGracePeriodSeconds $need (add $need 10)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- $errors = append $errors "autoscaling.minReplicas is greater than autoscaling.maxReplicas" }}
{{- end }}
{{- if $errors }}
{{- printf "\nVALUES VALIDATION:\n  - %s" (join "\n  - " $errors) | fail }}
{{- end }}
{{- end }}
