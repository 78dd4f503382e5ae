#!/usr/bin/env bash
# The Spark report (`moderation report`) on a Spark cluster through spark-submit, from the
# repository root (/app in the image) with the project installed in the driver's Python:
#
#   SPARK_MASTER=spark://spark-master:7077 bash deploy/spark/submit-report.sh s3://LAKE-BUCKET/moderation
#
# The driver (client deploy mode: this machine or pod) resolves each Delta snapshot with deltalake
# and writes <lake>/reports/; the executors read the snapshot's parquet files through S3A, so
# hadoop-aws of the Hadoop version pyspark bundles goes on the classpath. S3 credentials come from
# the standard AWS environment / credential chain on the driver and the executors (an IAM role),
# never from here; AWS_ENDPOINT_URL points both at an S3-compatible store. Exit codes are the CLI's.
set -euo pipefail
lake="${1:?usage: deploy/spark/submit-report.sh s3://bucket/lake}"
master="${SPARK_MASTER:?set SPARK_MASTER, e.g. spark://spark-master:7077, k8s://https://HOST:443 or local[*]}"
jars="$(python -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"
hadoop="$(basename "$(ls "$jars"/hadoop-client-api-*.jar)" .jar)"
hadoop="${hadoop#hadoop-client-api-}"
endpoint=()
if [ -n "${AWS_ENDPOINT_URL:-}" ]; then
  endpoint=(--conf "spark.hadoop.fs.s3a.endpoint=$AWS_ENDPOINT_URL" --conf spark.hadoop.fs.s3a.path.style.access=true)
fi
exec spark-submit \
  --master "$master" \
  --deploy-mode client \
  --driver-memory 4g \
  --packages "org.apache.hadoop:hadoop-aws:$hadoop" \
  --conf spark.hadoop.fs.s3a.aws.credentials.provider=software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider \
  "${endpoint[@]}" \
  jobs/report.py --lake "$lake"
