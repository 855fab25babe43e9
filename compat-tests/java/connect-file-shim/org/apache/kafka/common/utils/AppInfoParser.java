// For compat-tests/test_connect.py: Maven Central has no connect-file 4.4.0 (scripts/kafka/pom.xml
// fetches the newest one, 4.3.1), and the 4.3.1 FileStream connectors call
// org.apache.kafka.common.utils.AppInfoParser.getVersion() (from their version()), a class Kafka
// 4.4 moved to org.apache.kafka.common.utils.internals. This is the only symbol of theirs missing
// from the 4.4 jars (checked with javap over the connect-file classes): a one-method stand-in,
// compiled by the scenario and put on the Connect worker's classpath, delegating to the moved one.
package org.apache.kafka.common.utils;

public final class AppInfoParser {
    private AppInfoParser() {}

    public static String getVersion() {
        return org.apache.kafka.common.utils.internals.AppInfoParser.getVersion();
    }
}
