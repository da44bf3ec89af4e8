-- Every live project gets the default VPC that projects now start with.
INSERT INTO vpc (id, name, description, project_id, time_created, time_modified, dns_name,
                 vni, ipv6_prefix, v2p_generation, rcgen)
SELECT gen_random_uuid(), 'default', 'Default VPC', p.id, now(), now(), 'default',
       1024 + floor(random() * 16776191)::INT8,
       ('fd' || lpad(to_hex(floor(random() * 256)::INT8), 2, '0') || ':'
            || lpad(to_hex(floor(random() * 65536)::INT8), 4, '0') || ':'
            || lpad(to_hex(floor(random() * 65536)::INT8), 4, '0') || '::/48')::INET,
       1, 1
FROM project p
WHERE p.time_deleted IS NULL
  AND NOT EXISTS (SELECT 1 FROM vpc v WHERE v.project_id = p.id AND v.time_deleted IS NULL);
